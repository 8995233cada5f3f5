from slp.cli.main import main

main()
