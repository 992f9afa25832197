"""The optbench engine. Never imports Textual; the modules a UI process needs never import torch at import time."""
