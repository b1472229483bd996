"""course_lib: the code behind the course "Training LLMs with the Hugging Face stack".

Notebooks call into this package; everything here is importable without IPython
and unit-tested. Start with :func:`course_lib.env.setup` and the role registry in
:mod:`course_lib.profiles`.
"""

from .env import install_extras, setup
from .profiles import CourseError, active_profile, resolve

__version__ = "0.1.0"
__all__ = ["CourseError", "active_profile", "install_extras", "resolve", "setup", "__version__"]
