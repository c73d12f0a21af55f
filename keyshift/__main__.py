from keyshift.cli import main

main()
