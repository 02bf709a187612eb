"""`python -m fastconv`: print what this installation was built with."""
import fastconv

for key, value in fastconv.build_info().items():
    if isinstance(value, list):
        value = ", ".join(value)
    print(f"{key:22s} {value}")
