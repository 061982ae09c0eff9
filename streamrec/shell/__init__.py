"""The shell: what a user runs (the `streamrec` command line, the demo, the embedded stack, worker
processes). It sits on top of the stages and the core; nothing below imports it."""
