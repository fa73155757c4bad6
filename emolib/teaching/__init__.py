"""Classroom assignments generated from emolib: exercises, autograder checks, figures, nbgrader course.

See ``docs/teaching.md``. ``python -m emolib.teaching build`` writes the course folder;
``python -m emolib.teaching grade SUBMISSIONS`` scores a folder of student notebooks.
"""

from emolib.teaching.exercises import EXERCISES, Exercise, TestCell, exercise

__all__ = ["EXERCISES", "Exercise", "TestCell", "exercise"]
