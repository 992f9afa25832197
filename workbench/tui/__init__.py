"""The Textual front end. Imports textual; never imports torch (the job process does the heavy work)."""
