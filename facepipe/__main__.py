from facepipe.cli import main

main()
