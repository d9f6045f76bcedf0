"""What MLflow shows of a sweep: its trial runs' states and their closing when a trial is
lost (trial_runs), the parent run's running story (story), and the parent run itself,
finalised with the best trial and the summary the command prints (parent).
"""
