"""Registry[T]: registration, lookup, overrides, requirements and suggestions."""

from __future__ import annotations

import pytest

from trainkit.registry import Registry


class Base:
    def __init__(self, size: int = 1) -> None:
        self.size = size


class Child(Base):
    pass


def make_registry() -> Registry[Base]:
    reg: Registry[Base] = Registry("widget", base=Base)
    reg.register("child", Child, size=3, description="a child")

    @reg.register("built")
    def build(size: int = 5) -> Base:
        return Base(size)

    return reg


def test_decorator_and_call_registration():
    reg = make_registry()
    assert reg.available() == ["built", "child"]
    assert "child" in reg
    assert len(reg) == 2
    assert list(reg) == ["built", "child"]


def test_get_applies_defaults_and_overrides():
    reg = make_registry()
    assert reg.get("child").size == 3
    assert reg.get("child", size=7).size == 7
    assert reg.get("built").size == 5


def test_duplicate_name_is_an_error_unless_override():
    reg = make_registry()
    with pytest.raises(ValueError, match="'child' is already registered"):
        reg.register("child", Base)
    reg.register("child", Base, override=True)
    assert type(reg.get("child")) is Base


def test_unknown_name_lists_available_and_closest():
    reg = make_registry()
    with pytest.raises(ValueError, match=r"Unknown widget 'chlid'\. Did you mean 'child'\? Available: built, child"):
        reg.get("chlid")


def test_bad_kwarg_names_entry():
    reg = make_registry()
    with pytest.raises(TypeError, match=r"widget 'child'.*colour"):
        reg.get("child", colour=1)


def test_type_is_enforced():
    reg = make_registry()
    reg.register("wrong", lambda: object())
    with pytest.raises(TypeError, match="not a Base"):
        reg.get("wrong")


def test_non_callable_and_bad_name_rejected():
    reg = make_registry()
    with pytest.raises(TypeError, match="callable"):
        reg.register("x", 3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="non-empty string"):
        reg.register("", Base)


def test_missing_requirement_names_package_and_install():
    reg = make_registry()
    reg.register("needs_pkg", Base, requires="surely_not_installed_pkg_xyz")
    reg.register("needs_ver", Base, requires="torch>=999.0", install="pip install 'torch>=999'")
    with pytest.raises(ImportError, match=r"needs surely_not_installed_pkg_xyz.*pip install surely_not_install"):
        reg.get("needs_pkg")
    with pytest.raises(ImportError, match=r"pip install 'torch>=999'"):
        reg.get("needs_ver")
    assert "needs_pkg" in reg.available()
    assert "needs_pkg" not in reg.available(installed_only=True)
    assert reg.entry("needs_pkg", check_requirements=False).name == "needs_pkg"


def test_satisfied_requirement():
    reg = make_registry()
    reg.register("ok", Base, requires=("torch", "numpy>=1.0"))
    assert reg.get("ok").size == 1


def test_remove():
    reg = make_registry()
    reg.remove("child")
    assert "child" not in reg
    with pytest.raises(ValueError, match="Unknown widget"):
        reg.remove("child")
