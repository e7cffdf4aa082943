from multiip.cli import main

main()
