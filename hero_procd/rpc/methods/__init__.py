"""RPC methods, one module per area; thin: params → store call → result."""
