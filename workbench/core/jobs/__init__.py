"""Jobs: heavy work in a child process that streams line-delimited JSON events; the parent survives anything."""
