"""Faces in photos: the face finder (BlazeFace, dlib), its model files, its fine-tuning samples."""
