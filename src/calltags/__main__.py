from calltags.cli import main

main()
