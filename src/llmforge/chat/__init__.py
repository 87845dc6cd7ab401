"""Chat: conversations from rows, chat templates installed, loss masks applied, fine-tuning examples built."""
