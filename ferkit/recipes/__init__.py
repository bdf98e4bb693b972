"""Training recipes, one module per paper. Importing this package registers them all.

Every module here is imported by a package scan, so a new recipe file registers itself without an
import line in this file.
"""
from ferkit.utils.discovery import import_submodules

import_submodules("ferkit.recipes")
