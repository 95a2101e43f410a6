-- The function whose write registered a sentiment callback (create-post, update-post,
-- add-comment): sent as X-Function-Name with every delivery attempt.
ALTER TABLE callback_deliveries ADD COLUMN function_name text;
