"""Finds the package `sandbox` of this checkout for the venv ci/setup made (ci/setup copies
this file into the venv's site-packages with CHECKOUT replaced, beside a .pth that imports
it at every interpreter start).

Why not setuptools' own editable finder: it imports pathlib, re, urllib and importlib.util
at every start (~14 ms of each cold `sandbox run`). Why not only the plain path entry of
editable_mode=compat: it puts the checkout's root on sys.path, and Python finds a package
there by listing that directory, which an agent may not read (its policy unveils the
package's directory, `@python`, not the checkout). This finder names the package's own
files directly; it imports nothing that is not loaded already.
"""

import sys
from importlib.machinery import ModuleSpec, SourceFileLoader

_PACKAGE = "sandbox"
_DIR = "CHECKOUT/sandbox"


class EditableFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):  # noqa: ANN001, ANN205 (importlib protocol)
        if name != _PACKAGE:
            return None
        origin = _DIR + "/__init__.py"
        spec = ModuleSpec(name, SourceFileLoader(name, origin), origin=origin, is_package=True)
        spec.submodule_search_locations = [_DIR]
        spec.has_location = True
        return spec


# After the path finders, as setuptools' own: a copy of sandbox on PYTHONPATH (an installed
# one, a test's) is found first; this finder answers only where they found none.
if not any(getattr(f, "__name__", "") == "EditableFinder" for f in sys.meta_path):
    sys.meta_path.append(EditableFinder)
