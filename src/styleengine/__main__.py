from styleengine._entry import console

console()
