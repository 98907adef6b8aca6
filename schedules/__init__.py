"""Schedules: timestep tables, presets, switch rules, the schedule search, schedule files (torch and stdlib only)."""
