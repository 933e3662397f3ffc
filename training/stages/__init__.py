"""Training stages, each a module with ``main(argv=None)``.

Run as ``python -m training.stages.<name> --config F --set k=v`` or ``accelerate launch -m training.stages.<name> ...``.
"""
