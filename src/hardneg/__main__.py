from hardneg.cli import main

main()
