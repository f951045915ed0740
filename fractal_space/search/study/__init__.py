"""Study bookkeeping both backends share: settings, storages, accounting, the runner of a trial inside a study,
and what the console and dashboard show."""
