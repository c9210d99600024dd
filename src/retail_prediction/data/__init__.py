"""Transaction files in, validated Arrow tables and flat line tables out (training side): the LGSR schema,
reading and validation, synthetic weeks in the same schema."""
