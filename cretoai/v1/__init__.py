"""Generated from protos/cretoai/v1 by cretoai.tools.protogen. Do not edit."""
