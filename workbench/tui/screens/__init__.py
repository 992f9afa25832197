"""Screens pushed over the workbench: sessions, compare, help, dialogs."""
