"""One module per pane of the workbench."""
