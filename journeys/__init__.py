"""The journey language: models, validation, and the step interpreter's pure logic.

Never imports the store, activities or workflows.
"""
