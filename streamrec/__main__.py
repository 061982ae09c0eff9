from streamrec.shell.cli import main

main()
