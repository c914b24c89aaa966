"""Famulor's webhooks (delivery receipts, ended conversations) as Airflow asset events."""
