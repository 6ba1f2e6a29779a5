from edgehema.cli import main

main()
