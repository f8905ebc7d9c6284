"""The dashboard API and page (Starlette). Imports core and storage, never Dagster."""
