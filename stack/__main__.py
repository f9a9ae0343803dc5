from stack.run import run

run()
