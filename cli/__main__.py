from incl.cli.main import main

main()
