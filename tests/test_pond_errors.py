"""pond's own errors are PondErrors (one line at the command line), and still the built-in type callers catch."""
import pytest

from curation.errors import PondError
from pond.recipe import RecipeError
from pond.runner import StepFailed
from pond.update import UpdateError


@pytest.mark.parametrize("error, builtin", [(RecipeError, ValueError), (StepFailed, RuntimeError),
                                            (UpdateError, ValueError)])
def test_each_is_a_pond_error_and_its_builtin(error, builtin):
    assert issubclass(error, PondError) and issubclass(error, builtin)
