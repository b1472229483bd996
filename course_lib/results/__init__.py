"""Results measured once on machines CI does not have (a GPU, an hour-long sweep), shipped inside the
package so that a plain ``pip install`` (Colab) shows them too. Each file names the command that wrote it."""

from pathlib import Path

FOLDER = Path(__file__).parent
"""Where the stored results live: ``course_lib/results/`` in the repository and in the installed package."""
