"""The agent's side: pledge() and unveil() for the calling process, and the client of the
broker channel. Imported inside sandboxed processes: keep it light.
"""
