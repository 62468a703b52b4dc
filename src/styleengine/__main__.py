from styleengine.cli import main

main()
