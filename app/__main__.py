"""``python -m app`` starts the desktop demo."""
import sys

from app.main import main

sys.exit(main())
