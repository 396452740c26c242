"""Mammoth vs mammoth-moe vs nn.Linear (time and peak memory). See medmoe/bench/mammoth_layers.py."""

from medmoe.bench.mammoth_layers import main

if __name__ == "__main__":
    main()
