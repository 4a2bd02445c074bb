from flowpost.cli import main

main()
