"""Teachers score (query, passage) pairs offline; see :mod:`retrieval_distill.teachers.base`."""

from retrieval_distill.teachers.base import Teacher, TeacherSpec, build_teacher, register_teacher

__all__ = ["Teacher", "TeacherSpec", "build_teacher", "register_teacher"]
