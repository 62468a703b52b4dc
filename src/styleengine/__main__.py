from styleengine.cli import console

console()
