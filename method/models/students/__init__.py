"""Student networks: one module per architecture, shared blocks in ``blocks``, and the registry.

    from method.models.students import build_student
    branch = build_student("gmmformer_v2", cfg)   # cfg: that student's Config

A new student is one module with a ``Student`` subclass (``base``) decorated
with ``@register``, its ``Config`` dataclass and per-collection values;
``method.models.model`` builds one (or two, DL-DKD's branches) from the
registry, the command line gets its settings as flags, and the rest of the
code only sees its levels and embeddings.
"""
from __future__ import annotations

from method.models.students.base import ConfigError, Student, StudentConfig

STUDENTS: dict[str, type[Student]] = {}


def register(cls: type[Student]) -> type[Student]:
    """Class decorator: make ``cls`` available as ``--student cls.name``."""
    if cls.name in STUDENTS:
        raise ValueError(f"student {cls.name!r} is registered twice")
    STUDENTS[cls.name] = cls
    return cls


def student_class(name: str) -> type[Student]:
    """The registered class of ``name``; ValueError naming the choices otherwise."""
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; expected one of {sorted(STUDENTS)}")
    return STUDENTS[name]


def build_student(name: str, cfg: StudentConfig, with_query_proj: bool = True) -> Student:
    """One branch network of architecture ``name`` with its configuration ``cfg``."""
    cls = student_class(name)
    if not isinstance(cfg, cls.Config):
        raise TypeError(f"the {name} student takes a {cls.Config.__name__}, got {type(cfg).__name__}")
    cls.check_config(cfg)
    return cls(cfg, with_query_proj)


from method.models.students import dldkd, gmmformer, gmmformer_v2, holmes, ral  # noqa: E402,F401  (registers the students)

__all__ = ["ConfigError", "Student", "StudentConfig", "STUDENTS", "register", "student_class", "build_student"]
