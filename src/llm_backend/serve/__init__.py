"""`llm-backend serve`: the front door and supervisor (issue 13).

door.py (ASGI pass-through, holding, fallback), supervisor.py (load, liveness, restarts,
idle stop), metrics.py (Prometheus), record.py (serve.json), control.py (stop/restart
through the door), daemon.py (uvicorn + signals), service.py (systemd unit).
"""
