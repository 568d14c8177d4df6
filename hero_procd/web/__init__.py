"""The browser listener: dashboard pages, /rpc, /metrics and /events (Server-Sent Events)."""
