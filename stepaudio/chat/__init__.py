"""Step-Audio-Chat prompt logic: the chat template over text and audio turns, and text-based history."""
