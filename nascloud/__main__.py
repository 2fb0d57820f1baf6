from nascloud.cli import main

main()
