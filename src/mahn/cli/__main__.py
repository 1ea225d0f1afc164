from mahn.cli import main

main()
