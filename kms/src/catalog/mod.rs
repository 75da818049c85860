pub struct _X;
