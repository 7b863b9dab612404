"""Adding a member to a closed ``str`` enum such as ``peft.utils.PeftType``.

PEFT's ``register_peft_method`` only accepts names that already are ``PeftType`` members, and Python
enums are closed. This module adds one the way ``EnumType`` itself stores members, so that every
lookup style works: ``PeftType.MDPD``, ``PeftType["MDPD"]``, ``PeftType("MDPD")``, ``list(PeftType)``.
It imports nothing but the standard library so it can be checked on every supported Python.
"""

import enum


def add_str_enum_member(enum_cls: type[enum.Enum], name: str) -> enum.Enum:
    """Return ``enum_cls[name]``, creating it (value ``name``) if it does not exist yet. Idempotent."""
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    # Python >= 3.12 resolves `enum_cls.NAME` through the class dict, not through `_member_map_`;
    # `type.__setattr__` bypasses EnumType.__setattr__, which refuses to (re)bind member names.
    type.__setattr__(enum_cls, name, member)
    return member
