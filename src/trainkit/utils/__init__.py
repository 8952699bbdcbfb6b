"""Small helpers shared by the components: optional imports, seeding, logging, distributed."""
